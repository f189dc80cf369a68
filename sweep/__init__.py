"""deployc.sweep: many builds of one base config on Ray, and the Pareto front of their artifacts. The sweep file
(spec), which variants share a pass prefix (plan), which variants to build (search), running them on Ray (runner),
what was found (results), its report (report) and the `deployc sweep` command (command).

May import: deployc's public API (driver, outputs, compiler, core, storage, errors); the driver never imports it."""
