// The shell: who is signed in, which screen to show, the header with log out.
import { useEffect, useState } from 'react';
import { clearSession, loadSession, setOnSessionLost, type Session } from './api';
import { AuthPage } from './AuthPage';
import { Link } from './components';
import { ProjectPage } from './ProjectPage';
import { ProjectsPage } from './ProjectsPage';
import { navigate, useRoute } from './router';

export function App() {
  const route = useRoute();
  const [session, setSession] = useState<Session | null>(loadSession);

  useEffect(() => {
    setOnSessionLost(() => {
      setSession(null);
      navigate('/login', true);
    });
  }, []);

  const signedOut = !session;
  const onAuthPage = route.name === 'login' || route.name === 'signup';

  useEffect(() => {
    if (signedOut && !onAuthPage) navigate('/login', true);
    if (!signedOut && onAuthPage) navigate('/projects', true);
  }, [signedOut, onAuthPage]);

  useEffect(() => {
    document.title = session ? 'Quiver console' : 'Quiver console — sign in';
  }, [session]);

  if (!session) {
    const mode = route.name === 'signup' ? 'signup' : 'login';
    return <AuthPage key={mode} mode={mode} onSignedIn={setSession} />;
  }

  const logOut = () => {
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
