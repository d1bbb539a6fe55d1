// The caller's projects, and the form that creates one.
import { useEffect, useState, type FormEvent } from 'react';
import { call } from './api';
import type { Metric, Plan, ProjectView } from './client/types.gen';
import { Plans, Projects } from './client/sdk.gen';
import { ErrorAlert, Link, formatDate, formatNumber } from './components';

const METRICS: Metric[] = ['cosine', 'euclidean', 'dotproduct'];

export function ProjectsPage() {
  const [projects, setProjects] = useState<ProjectView[] | null>(null);
  const [plans, setPlans] = useState<Plan[]>([]);
  const [error, setError] = useState<unknown>(null);

  useEffect(() => {
    Promise.all([call(Projects.listProjects()), call(Plans.listPlans())])
      .then(([projectList, planList]) => {
        setProjects(projectList.projects);
        setPlans(planList.plans);
      })
      .catch(setError);
  }, []);

  return (
    <main className="page">
      <h1>Projects</h1>
      <ErrorAlert error={error} />
      <section className="card" aria-labelledby="projects-heading">
        <h2 id="projects-heading">Your projects</h2>
        {projects === null && !error && <p className="muted">Loading…</p>}
        {projects?.length === 0 && <p className="muted">No projects yet: create your first one below.</p>}
        {projects && projects.length > 0 && (
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Dimension</th>
                <th scope="col">Metric</th>
                <th scope="col">Plan</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {projects.map((project) => (
                <tr key={project.id}>
                  <td>
                    <Link to={`/projects/${project.id}`}>{project.name}</Link>
                  </td>
                  <td>{project.dimension}</td>
                  <td>{project.metric}</td>
                  <td>{project.limits?.name ?? project.plan}</td>
                  <td>{formatDate(project.created_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
      <CreateProject plans={plans} onCreated={(project) => setProjects((list) => [...(list ?? []), project])} />
    </main>
  );
}

function CreateProject({ plans, onCreated }: { plans: Plan[]; onCreated: (project: ProjectView) => void }) {
  const [name, setName] = useState('');
  const [dimension, setDimension] = useState('768');
  const [metric, setMetric] = useState<Metric>('cosine');
  const [plan, setPlan] = useState('starter');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [created, setCreated] = useState<string | null>(null);
  const selected = plans.find((p) => p.id === plan);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    setCreated(null);
    try {
      const project = await call(
        Projects.createProject({ body: { name: name.trim(), dimension: Number(dimension), metric, plan } }),
      );
      onCreated(project);
      setCreated(project.name);
      setName('');
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  return (
    <section className="card" aria-labelledby="create-project-heading">
      <h2 id="create-project-heading">Create a project</h2>
      <form className="grid-form" onSubmit={submit} aria-label="Create a project">
        <div className="field">
          <label htmlFor="project-name">Name</label>
          <input id="project-name" required maxLength={200} value={name} onChange={(e) => setName(e.target.value)} />
        </div>
        <div className="field">
          <label htmlFor="project-dimension">Dimension</label>
          <input
            id="project-dimension"
            type="number"
            required
            min={1}
            max={4096}
            step={1}
            aria-describedby="dimension-hint"
            value={dimension}
            onChange={(e) => setDimension(e.target.value)}
          />
          <p id="dimension-hint" className="hint">
            1 to 4096; fixed once created.
          </p>
        </div>
        <div className="field">
          <label htmlFor="project-metric">Metric</label>
          <select id="project-metric" value={metric} onChange={(e) => setMetric(e.target.value as Metric)}>
            {METRICS.map((m) => (
              <option key={m} value={m}>
                {m}
              </option>
            ))}
          </select>
        </div>
        <div className="field">
          <label htmlFor="project-plan">Plan</label>
          <select id="project-plan" aria-describedby="plan-hint" value={plan} onChange={(e) => setPlan(e.target.value)}>
            {plans.length === 0 && <option value="starter">starter</option>}
            {plans.map((p) => (
              <option key={p.id} value={p.id}>
                {p.name}
              </option>
            ))}
          </select>
          <p id="plan-hint" className="hint">
            {selected
              ? `${formatNumber(selected.queries_per_minute)} queries/min, ${formatNumber(selected.documents_per_minute)} documents/min.`
              : ' '}
          </p>
        </div>
        <div className="field field-submit">
          <button type="submit" className="button primary" disabled={busy}>
            {busy ? 'Creating…' : 'Create project'}
          </button>
        </div>
      </form>
      <ErrorAlert error={error} />
      {created && (
        <p role="status" className="success">
          Project “{created}” created.
        </p>
      )}
    </section>
  );
}
