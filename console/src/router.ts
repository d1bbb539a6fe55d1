// A tiny history-API router: the console has four screens, not worth a dependency.
import { useEffect, useState } from 'react';

export type Route =
  | { name: 'login' }
  | { name: 'signup' }
  | { name: 'projects' }
  | { name: 'project'; id: string }
  | { name: 'not-found' };

export function parseRoute(pathname: string): Route {
  const path = pathname.replace(/\/+$/, '') || '/';
  if (path === '/' || path === '/projects') return { name: 'projects' };
  if (path === '/login') return { name: 'login' };
  if (path === '/signup') return { name: 'signup' };
  const project = /^\/projects\/([^/]+)$/.exec(path);
  if (project) {
    try {
      return { name: 'project', id: decodeURIComponent(project[1]) };
    } catch {
      // A malformed escape (`/projects/%zz`) names no project.
      return { name: 'not-found' };
    }
  }
  return { name: 'not-found' };
}

/**
 * Where to go after signing in: the page a signed-out visit asked for (`?next=`), when
 * it is a path of this console, else the project list.
 */
export function afterSignIn(search: string): string {
  const next = new URLSearchParams(search).get('next');
  const ours = next !== null && next.startsWith('/') && !next.startsWith('//') && !next.includes('\\');
  return ours && parseRoute(new URL(next, location.origin).pathname).name !== 'login' ? next : '/projects';
}

/** The login page, remembering the page asked for so that signing in returns to it. */
export function loginPath(): string {
  const here = location.pathname + location.search;
  return here === '/' || here === '/projects' ? '/login' : `/login?next=${encodeURIComponent(here)}`;
}

export function navigate(to: string, replace = false): void {
  if (replace) history.replaceState(null, '', to);
  else history.pushState(null, '', to);
  window.dispatchEvent(new PopStateEvent('popstate'));
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.pathname));
  useEffect(() => {
    const update = () => setRoute(parseRoute(location.pathname));
    window.addEventListener('popstate', update);
    return () => window.removeEventListener('popstate', update);
  }, []);
  return route;
}
