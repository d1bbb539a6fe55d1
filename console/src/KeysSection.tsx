// A project's API keys: list, create (the whole key shown once), revoke.
import { useCallback, useEffect, useState, type FormEvent } from 'react';
import { call } from './api';
import type { CreatedKey, KeyView, Role } from './client/types.gen';
import { Keys } from './client/sdk.gen';
import { ConfirmDialog, CopyButton, ErrorAlert, formatDate } from './components';

const ROLES: Role[] = ['app_readonly', 'app_readwrite', 'admin'];

const ROLE_HINTS: Record<Role, string> = {
  app_readonly: 'Search, fetch, query, list.',
  app_readwrite: 'Also upsert, update and delete records.',
  admin: 'Also delete whole namespaces.',
};

function keyStatus(key: KeyView): string {
  if (key.revoked_at) return 'Revoked';
  if (key.expires_at && Date.parse(key.expires_at) <= Date.now()) return 'Expired';
  return 'Active';
}

export function KeysSection({ projectId }: { projectId: string }) {
  const [keys, setKeys] = useState<KeyView[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [created, setCreated] = useState<CreatedKey | null>(null);
  const [revoking, setRevoking] = useState<KeyView | null>(null);

  const load = useCallback(
    () =>
      call(Keys.listKeys({ path: { id: projectId } }))
        .then((list) => {
          setKeys(list.keys);
          setError(null);
        })
        .catch(setError),
    [projectId],
  );

  useEffect(() => {
    load();
  }, [load]);

  const revoke = async (key: KeyView) => {
    await call(Keys.revokeKey({ path: { id: projectId, key_id: key.id } }));
    setRevoking(null);
    await load();
  };

  return (
    <section className="card" aria-labelledby="keys-heading">
      <h2 id="keys-heading">API keys</h2>
      <ErrorAlert error={error} />
      {created && <NewKey created={created} onDone={() => setCreated(null)} />}
      {keys?.length === 0 && <p className="muted">No keys yet.</p>}
      {keys && keys.length > 0 && (
        <div className="table-scroll">
        <table aria-label="API keys">
          <thead>
            <tr>
              <th scope="col">Label</th>
              <th scope="col">Prefix</th>
              <th scope="col">Role</th>
              <th scope="col">Created</th>
              <th scope="col">Last used</th>
              <th scope="col">Expires</th>
              <th scope="col">Status</th>
              <th scope="col">
                <span className="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {keys.map((key) => {
              const status = keyStatus(key);
              return (
                <tr key={key.id} className={status === 'Active' ? undefined : 'inactive'}>
                  <td className="nowrap">{key.label}</td>
                  <td className="nowrap">
                    <code>{key.prefix}</code>
                  </td>
                  <td>{key.role}</td>
                  <td className="nowrap">{formatDate(key.created_at)}</td>
                  <td className="nowrap">{formatDate(key.last_used_at, 'never')}</td>
                  <td className="nowrap">{formatDate(key.expires_at, 'never')}</td>
                  <td>
                    <span className={`badge badge-${status.toLowerCase()}`}>{status}</span>
                    {key.revoked_at && <span className="revoked-at">{formatDate(key.revoked_at)}</span>}
                  </td>
                  <td>
                    {!key.revoked_at && (
                      <button type="button" className="button small danger-outline" aria-label={`Revoke key ${key.label}`} onClick={() => setRevoking(key)}>
                        Revoke
                      </button>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
        </div>
      )}
      <CreateKey
        projectId={projectId}
        onCreated={(key) => {
          setCreated(key);
          load();
        }}
      />
      {revoking && (
        <ConfirmDialog
          title={`Revoke key “${revoking.label}”?`}
          confirmLabel="Revoke key"
          onConfirm={() => revoke(revoking)}
          onCancel={() => setRevoking(null)}
        >
          <p>
            Every request with <code>{revoking.prefix}…</code> is refused from now on. This cannot be undone.
          </p>
        </ConfirmDialog>
      )}
    </section>
  );
}

function NewKey({ created, onDone }: { created: CreatedKey; onDone: () => void }) {
  return (
    <div className="new-key" role="region" aria-labelledby="new-key-heading">
      <h3 id="new-key-heading">New key “{created.label}”</h3>
      <p className="warning">
        <strong>Copy this key now: you will not see it again.</strong> Quiver keeps only a hash of its secret.
      </p>
      <div className="with-action">
        <label htmlFor="new-key-value" className="visually-hidden">
          New API key
        </label>
        <input id="new-key-value" className="key-value" readOnly value={created.key} onFocus={(e) => e.target.select()} />
        <CopyButton text={created.key} label="Copy key" />
        <button type="button" className="button" onClick={onDone}>
          Done
        </button>
      </div>
    </div>
  );
}

function CreateKey({ projectId, onCreated }: { projectId: string; onCreated: (key: CreatedKey) => void }) {
  const [label, setLabel] = useState('');
  const [role, setRole] = useState<Role>('app_readonly');
  const [expires, setExpires] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const expires_at = expires ? new Date(expires).toISOString() : null;
      const key = await call(Keys.createKey({ path: { id: projectId }, body: { label: label.trim(), role, expires_at } }));
      setLabel('');
      setExpires('');
      onCreated(key);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="grid-form create-key" onSubmit={submit} aria-label="Create an API key">
      <h3 className="form-title">Create a key</h3>
      <div className="field">
        <label htmlFor="key-label">Label</label>
        <input id="key-label" required maxLength={100} value={label} onChange={(e) => setLabel(e.target.value)} />
      </div>
      <div className="field">
        <label htmlFor="key-role">Role</label>
        <select id="key-role" aria-describedby="role-hint" value={role} onChange={(e) => setRole(e.target.value as Role)}>
          {ROLES.map((r) => (
            <option key={r} value={r}>
              {r}
            </option>
          ))}
        </select>
        <p id="role-hint" className="hint">
          {ROLE_HINTS[role]}
        </p>
      </div>
      <div className="field">
        <label htmlFor="key-expires">Expires (optional)</label>
        <input id="key-expires" type="datetime-local" value={expires} onChange={(e) => setExpires(e.target.value)} />
      </div>
      <div className="field field-submit">
        <button type="submit" className="button primary" disabled={busy}>
          {busy ? 'Creating…' : 'Create key'}
        </button>
      </div>
      <div className="form-error">
        <ErrorAlert error={error} />
      </div>
    </form>
  );
}
