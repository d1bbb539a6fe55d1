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
  if (project) return { name: 'project', id: decodeURIComponent(project[1]) };
  return { name: 'not-found' };
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
