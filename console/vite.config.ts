import { defineConfig } from 'vite';

// The control plane serves dist/ at `/` of its listener and the API under `/v1`, so the
// app uses relative URLs. In development, Vite proxies the API to a local `cargo run`.
const controlPlane = process.env.QUIVER_CONTROL_URL ?? 'http://127.0.0.1:8081';

export default defineConfig({
  base: '/',
  esbuild: { jsx: 'automatic' },
  server: {
    proxy: {
      '/v1': controlPlane,
      '/openapi.json': controlPlane,
    },
  },
  build: { outDir: 'dist', sourcemap: true },
});
