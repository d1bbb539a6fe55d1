// Sign up and log in: one form, two modes.
import { useState, type FormEvent } from 'react';
import { call, saveSession, type Session } from './api';
import { Accounts } from './client/sdk.gen';
import { ErrorAlert, Link } from './components';

export function AuthPage({ mode, onSignedIn }: { mode: 'login' | 'signup'; onSignedIn: (session: Session) => void }) {
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const signup = mode === 'signup';
  const title = signup ? 'Create your account' : 'Log in to Quiver';

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body = { email: email.trim(), password };
      const view = signup ? await call(Accounts.signup({ body })) : await call(Accounts.login({ body }));
      onSignedIn(saveSession(view));
    } catch (e) {
      setError(e);
      setBusy(false);
    }
  };

  return (
    <main className="auth">
      <div className="card auth-card">
        <p className="brand brand-large">Quiver</p>
        <h1>{title}</h1>
        <form onSubmit={submit} aria-label={title}>
          <label htmlFor="email">Email</label>
          <input id="email" type="email" autoComplete="email" required value={email} onChange={(e) => setEmail(e.target.value)} />
          <label htmlFor="password">Password</label>
          <input
            id="password"
            type="password"
            autoComplete={signup ? 'new-password' : 'current-password'}
            required
            minLength={signup ? 12 : undefined}
            aria-describedby={signup ? 'password-hint' : undefined}
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
          {signup && (
            <p id="password-hint" className="hint">
              At least 12 characters.
            </p>
          )}
          <ErrorAlert error={error} />
          <button type="submit" className="button primary wide" disabled={busy}>
            {busy ? 'Please wait…' : signup ? 'Sign up' : 'Log in'}
          </button>
        </form>
        <p className="switch">
          {signup ? (
            <>
              Already have an account? <Link to="/login">Log in</Link>
            </>
          ) : (
            <>
              New to Quiver? <Link to="/signup">Create an account</Link>
            </>
          )}
        </p>
      </div>
    </main>
  );
}
