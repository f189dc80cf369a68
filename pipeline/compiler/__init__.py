"""deployc.compiler: the pass pipeline. The Pass and Target contracts and the Context they read (contracts), the
entry-point registry that finds plugins by name (registry), the PassManager that checks a whole pipeline before it
runs it (manager) with its content-addressed pass cache (pass_cache), the canonical pipeline string, the model
loader, instruments around each pass and the resumable pass prefix a sweep shares.

May import: deployc.data, deployc.core, deployc.storage, deployc.errors. It names no pass and no target."""
