// The one place the console meets the control plane: the generated client, configured
// for a same-origin API and the session token, and errors turned into `ApiError`s that
// carry the envelope's message.
import { client } from './client/client.gen';
import type { ErrorEnvelope, SessionView, UserView } from './client/types.gen';

const SESSION_KEY = 'quiver.session';

export interface Session {
  token: string;
  user: UserView;
  expires_at: string;
}

/**
 * The session lives in sessionStorage: it ends with the tab. A log out also ends it on
 * the server (every session of the account), so a copy of the token stops working.
 */
export function loadSession(): Session | null {
  const raw = sessionStorage.getItem(SESSION_KEY);
  if (!raw) return null;
  try {
    const session = JSON.parse(raw) as Session;
    if (Date.parse(session.expires_at) <= Date.now()) {
      sessionStorage.removeItem(SESSION_KEY);
      return null;
    }
    return session;
  } catch {
    sessionStorage.removeItem(SESSION_KEY);
    return null;
  }
}

export function saveSession(view: SessionView): Session {
  const session: Session = { token: view.token, user: view.user, expires_at: view.expires_at };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  return session;
}

export function clearSession(): void {
  sessionStorage.removeItem(SESSION_KEY);
}

// Same origin: the control plane serves the console and the API side by side.
client.setConfig({
  baseUrl: '',
  auth: () => loadSession()?.token,
});

/** An error the API answered with (or a network failure, as status 0). */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
    readonly detail: string | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

let onSessionLost: () => void = () => {};

/**
 * Called when a request answers 401: the session expired (here or by the server's
 * clock), was ended, or was never there. The control plane answers 401 for nothing else
 * but a wrong password at login, where there is no session to lose.
 */
export function setOnSessionLost(fn: () => void): void {
  onSessionLost = fn;
}

function isEnvelope(value: unknown): value is ErrorEnvelope {
  const error = (value as ErrorEnvelope | null)?.error;
  return typeof error === 'object' && error !== null && typeof error.message === 'string';
}

function toApiError(error: unknown, response: Response | undefined): ApiError {
  if (isEnvelope(error)) {
    const { message, status, code, detail } = error.error;
    return new ApiError(message, status ?? response?.status ?? 0, code, detail ?? null);
  }
  if (!response) {
    return new ApiError('the control plane cannot be reached; check your connection', 0, 'NETWORK_ERROR');
  }
  const text = typeof error === 'string' && error.trim() ? `: ${error.trim().slice(0, 200)}` : '';
  return new ApiError(`unexpected answer from the control plane (HTTP ${response.status})${text}`, response.status, 'UNEXPECTED');
}

type Result<T> = { data?: T; error?: unknown; response?: Response };

/**
 * Awaits a generated SDK call and returns its data, or throws an `ApiError` with the
 * envelope's message.
 */
export async function call<T>(request: Promise<Result<T>>): Promise<T> {
  const { data, error, response } = await request;
  if (response?.ok) return data as T;
  const apiError = toApiError(error, response);
  if (apiError.status === 401) {
    clearSession();
    onSessionLost();
  }
  throw apiError;
}

export function errorMessage(error: unknown): string {
  if (error instanceof ApiError) return error.message;
  if (error instanceof Error) return error.message;
  return String(error);
}
