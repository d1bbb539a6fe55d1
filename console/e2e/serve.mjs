// A tiny static server for console/dist with an SPA fallback to index.html, proxying the
// control-plane routes to a running Quiver. It stands in for the control plane serving
// the console itself (the tests use it only with QUIVER_SERVES_CONSOLE=0).
//
//   node e2e/serve.mjs --upstream http://127.0.0.1:8081 --port 5174
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.json': 'application/json',
  '.map': 'application/json',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
};

const PROXIED = [/^\/v1(\/|$)/, /^\/openapi\.json$/, /^\/healthz$/, /^\/readyz$/];

function proxy(req, res, upstream) {
  const target = new URL(req.url, upstream);
  const forward = http.request(
    target,
    { method: req.method, headers: { ...req.headers, host: target.host } },
    (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    },
  );
  forward.on('error', (error) => {
    res.writeHead(502, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { code: 'BAD_GATEWAY', message: `proxy: ${error.message}`, detail: null, status: 502 } }));
  });
  req.pipe(forward);
}

async function serveFile(req, res, distDir) {
  let pathname;
  try {
    pathname = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  } catch {
    pathname = '/'; // a malformed escape is a route the app shows as not found
  }
  let file = path.join(distDir, path.normalize(pathname));
  if (!file.startsWith(distDir + path.sep)) file = path.join(distDir, 'index.html');
  let info = await stat(file).catch(() => null);
  // SPA fallback: any path that is not a file is a client-side route.
  if (!info || !info.isFile()) {
    file = path.join(distDir, 'index.html');
    info = await stat(file);
  }
  const hashed = file.includes(`${path.sep}assets${path.sep}`);
  res.writeHead(200, {
    'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
    'content-length': info.size,
    'cache-control': hashed ? 'public, max-age=31536000, immutable' : 'no-cache',
  });
  if (req.method === 'HEAD') return res.end();
  createReadStream(file).pipe(res);
}

/** Starts the server; resolves to `{ url, close() }`. `port` 0 picks a free one. */
export function startConsoleServer({ distDir, upstream, port = 0, host = '127.0.0.1' }) {
  const root = path.resolve(distDir);
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, 'http://x').pathname;
    if (PROXIED.some((re) => re.test(pathname))) return proxy(req, res, upstream);
    serveFile(req, res, root).catch((error) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(error));
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const { port: bound } = server.address();
      resolve({
        url: `http://${host}:${bound}`,
        close: () => new Promise((done) => { server.closeAllConnections(); server.close(() => done()); }),
      });
    });
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (name, fallback) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : fallback;
  };
  const here = path.dirname(fileURLToPath(import.meta.url));
  const { url } = await startConsoleServer({
    distDir: arg('dist', path.join(here, '..', 'dist')),
    upstream: arg('upstream', 'http://127.0.0.1:8081'),
    port: Number(arg('port', '5174')),
  });
  console.log(`console at ${url}`);
}
