// The shell: who is signed in, which screen to show, the header with log out.
import { useEffect, useState } from 'react';
import { call, clearSession, loadSession, setOnSessionLost, type Session } from './api';
import { Accounts } from './client/sdk.gen';
import { AuthPage } from './AuthPage';
import { Link } from './components';
import { ProjectPage } from './ProjectPage';
import { ProjectsPage } from './ProjectsPage';
import { afterSignIn, loginPath, navigate, useRoute } from './router';

export function App() {
  const route = useRoute();
  const [session, setSession] = useState<Session | null>(loadSession);

  // A lost session signs out; the effect below then goes to the login page,
  // remembering the page it was on.
  useEffect(() => setOnSessionLost(() => setSession(null)), []);

  const signedOut = !session;
  const onAuthPage = route.name === 'login' || route.name === 'signup';

  useEffect(() => {
    if (signedOut && !onAuthPage) navigate(loginPath(), true);
    if (!signedOut && onAuthPage) navigate(afterSignIn(location.search), true);
  }, [signedOut, onAuthPage]);

  useEffect(() => {
    document.title = session ? 'Quiver console' : 'Quiver console — sign in';
  }, [session]);

  if (!session) {
    const mode = route.name === 'signup' ? 'signup' : 'login';
    return <AuthPage key={mode} mode={mode} onSignedIn={setSession} />;
  }

  // Ends the session on the server too (a copy of the token stops working), then here
  // whatever the server said: a failed call must not keep anyone signed in.
  const logOut = async () => {
    try {
      await call(Accounts.logout());
    } catch {
      // Already ended, or the server is unreachable: signed out here all the same.
    }
    clearSession();
    setSession(null);
    navigate('/login', true);
  };

  return (
    <>
      <header className="topbar">
        <Link to="/projects" className="brand">
          Quiver
        </Link>
        <span className="topbar-user" aria-label="Signed in as">
          {session.user.email}
        </span>
        <button type="button" className="button" onClick={logOut}>
          Log out
        </button>
      </header>
      {route.name === 'projects' && <ProjectsPage />}
      {route.name === 'project' && <ProjectPage key={route.id} id={route.id} />}
      {route.name === 'not-found' && (
        <main className="page">
          <h1>Page not found</h1>
          <p>
            <Link to="/projects">Back to your projects</Link>
          </p>
        </main>
      )}
    </>
  );
}
