// One project: its settings, plan and limits, usage, data-plane URL, keys; delete.
import { useCallback, useEffect, useState, type FormEvent } from 'react';
import { call } from './api';
import type { Plan, ProjectView } from './client/types.gen';
import { Plans, Projects } from './client/sdk.gen';
import { ConfirmDialog, CopyButton, ErrorAlert, Link, formatDate, formatNumber } from './components';
import { KeysSection } from './KeysSection';
import { navigate } from './router';

export function ProjectPage({ id }: { id: string }) {
  const [project, setProject] = useState<ProjectView | null>(null);
  const [plans, setPlans] = useState<Plan[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [confirmDelete, setConfirmDelete] = useState(false);

  const load = useCallback(() => {
    setError(null);
    return call(Projects.getProject({ path: { id } }))
      .then(setProject)
      .catch(setError);
  }, [id]);

  useEffect(() => {
    load();
    call(Plans.listPlans())
      .then((list) => setPlans(list.plans))
      .catch(setError);
  }, [load]);

  const remove = async () => {
    await call(Projects.deleteProject({ path: { id } }));
    navigate('/projects', true);
  };

  return (
    <main className="page">
      <p className="breadcrumb">
        <Link to="/projects">← Projects</Link>
      </p>
      <ErrorAlert error={error} />
      {!project && !error && <p className="muted">Loading…</p>}
      {project && (
        <>
          <div className="title-row">
            <h1>{project.name}</h1>
            <button type="button" className="button danger" onClick={() => setConfirmDelete(true)}>
              Delete project
            </button>
          </div>
          <div className="columns">
            <section className="card" aria-labelledby="overview-heading">
              <h2 id="overview-heading">Overview</h2>
              <dl className="facts">
                <dt>Project ID</dt>
                <dd>
                  <code>{project.id}</code>
                </dd>
                <dt>Dimension</dt>
                <dd>{project.dimension}</dd>
                <dt>Metric</dt>
                <dd>{project.metric}</dd>
                <dt>API base URL</dt>
                <dd className="with-action">
                  <code data-testid="api-base-url">{project.api_base_url}</code>
                  <CopyButton text={project.api_base_url} label="Copy URL" />
                </dd>
                <dt>Vectors</dt>
                <dd>{project.usage ? formatNumber(project.usage.vectors) : '—'}</dd>
                <dt>Namespaces</dt>
                <dd>{project.usage ? formatNumber(project.usage.namespaces) : '—'}</dd>
                <dt>Created</dt>
                <dd>{formatDate(project.created_at)}</dd>
              </dl>
            </section>
            <PlanSection project={project} plans={plans} onChanged={setProject} />
          </div>
          <KeysSection projectId={project.id} />
        </>
      )}
      {confirmDelete && project && (
        <ConfirmDialog
          title={`Delete project “${project.name}”?`}
          confirmLabel="Delete project"
          onConfirm={remove}
          onCancel={() => setConfirmDelete(false)}
        >
          <p>Its API keys, namespaces and every record in them are deleted. This cannot be undone.</p>
        </ConfirmDialog>
      )}
    </main>
  );
}

function PlanSection({ project, plans, onChanged }: { project: ProjectView; plans: Plan[]; onChanged: (p: ProjectView) => void }) {
  const [plan, setPlan] = useState(project.plan);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [changed, setChanged] = useState<string | null>(null);
  const limits = project.limits;

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    setChanged(null);
    try {
      const updated = await call(Projects.updateProject({ path: { id: project.id }, body: { plan } }));
      onChanged(updated);
      setChanged(updated.limits.name);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  return (
    <section className="card" aria-labelledby="plan-heading">
      <h2 id="plan-heading">
        Plan: <span data-testid="plan-name">{limits.name}</span>
      </h2>
      <table aria-label="Plan limits" className="limits">
        <tbody>
          <tr>
            <th scope="row">Queries per minute</th>
            <td>{formatNumber(limits.queries_per_minute)}</td>
          </tr>
          <tr>
            <th scope="row">Documents per minute</th>
            <td>{formatNumber(limits.documents_per_minute)}</td>
          </tr>
          <tr>
            <th scope="row">Max vectors</th>
            <td>{formatNumber(limits.max_vectors)}</td>
          </tr>
          <tr>
            <th scope="row">Max namespaces</th>
            <td>{formatNumber(limits.max_namespaces)}</td>
          </tr>
          <tr>
            <th scope="row">Max batch size</th>
            <td>{formatNumber(limits.max_batch_size)}</td>
          </tr>
        </tbody>
      </table>
      <form className="inline-form" onSubmit={submit} aria-label="Change plan">
        <label htmlFor="change-plan">New plan</label>
        <select id="change-plan" value={plan} onChange={(e) => setPlan(e.target.value)}>
          {plans.map((p) => (
            <option key={p.id} value={p.id}>
              {p.name}
            </option>
          ))}
        </select>
        <button type="submit" className="button" disabled={busy || plan === project.plan}>
          {busy ? 'Changing…' : 'Change plan'}
        </button>
      </form>
      <ErrorAlert error={error} />
      {changed && (
        <p role="status" className="success">
          Plan changed to {changed}.
        </p>
      )}
    </section>
  );
}
