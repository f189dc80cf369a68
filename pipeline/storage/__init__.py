"""deployc.storage: everything deployc reads from or writes to disk goes through here. `files` is the one I/O
boundary (digests, atomic writes, bounded reads of regular files, paths confined to their folder); `outdir` owns
an out dir (its marker, lock, staging folder and the publish order that keeps manifest.json last).

May import: deployc.errors only. It knows nothing of configs, models, manifests or builds."""
