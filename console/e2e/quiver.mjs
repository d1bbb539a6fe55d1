// Finds, starts and stops a real standalone Quiver for the end-to-end tests.
import { spawn, execFileSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const consoleDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** `QUIVER_BIN`, else the workspace's debug build, else the CI build cache. */
export function findQuiverBinary() {
  const candidates = process.env.QUIVER_BIN
    ? [path.resolve(consoleDir, process.env.QUIVER_BIN)]
    : [path.join(consoleDir, '..', 'target', 'debug', 'quiver'), '/var/cache/quiver-target/debug/quiver'];
  const found = candidates.find((file) => existsSync(file));
  if (!found) throw new Error(`no quiver binary: looked at ${candidates.join(', ')}; build it or set QUIVER_BIN`);
  return found;
}

/** A port that was free a moment ago (the kernel picks it; we close and hand it over). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitUntilHealthy(url, child, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`quiver exited with ${child.exitCode} before it was healthy`);
    try {
      const response = await fetch(url);
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`quiver was not healthy at ${url} within ${timeoutMs} ms`);
}

/**
 * Starts `quiver standalone` on free ports with a temporary data directory; its stderr
 * (JSON logs) goes to `logFile`. Resolves to `{ controlUrl, dataUrl, stop() }`.
 */
export async function startQuiver({ logFile }) {
  const binary = findQuiverBinary();
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'quiver-console-e2e-'));
  const [dataPort, controlPort] = [await freePort(), await freePort()];
  const args = [
    'standalone',
    '--data-dir', dataDir,
    '--data-addr', `127.0.0.1:${dataPort}`,
    '--control-addr', `127.0.0.1:${controlPort}`,
    '--console-dir', path.join(consoleDir, 'dist'),
  ];
  // Newer binaries can skip downloading embedding models; older ones do not know the flag.
  const help = execFileSync(binary, ['standalone', '--help'], { encoding: 'utf8' });
  if (help.includes('--pull-models')) args.push('--pull-models=false');

  const log = createWriteStream(logFile);
  const child = spawn(binary, args, {
    env: { ...process.env, QUIVER_LOG_FORMAT: 'json' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });

  const controlUrl = `http://127.0.0.1:${controlPort}`;
  const dataUrl = `http://127.0.0.1:${dataPort}`;
  try {
    await waitUntilHealthy(`${controlUrl}/healthz`, child, 60_000);
    await waitUntilHealthy(`${dataUrl}/healthz`, child, 60_000);
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }

  return {
    binary,
    args,
    controlUrl,
    dataUrl,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      log.end();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
