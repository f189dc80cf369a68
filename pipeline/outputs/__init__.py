"""deployc.outputs: what a build leaves for people and machines to read. manifest.json (manifest), report.md
(report), report.html (report_html), junit.xml (junit) and the GitHub job summary (ci_summary).

May import: deployc.validation, deployc.compiler, deployc.data, deployc.core, deployc.storage, deployc.errors.
They format results; they decide nothing about them."""
