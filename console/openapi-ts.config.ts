import { defineConfig } from '@hey-api/openapi-ts';

// The console's API client is generated from the control plane's checked-in spec.
// Output is git-ignored: `npm run build` regenerates it.
export default defineConfig({
  input: '../openapi/control-plane.json',
  output: { path: 'src/client' },
  plugins: [
    '@hey-api/client-fetch',
    '@hey-api/typescript',
    // Functions grouped by tag: `Projects.listProjects()`, `Keys.createKey()`.
    { name: '@hey-api/sdk', operations: { strategy: 'byTags' } },
  ],
});
