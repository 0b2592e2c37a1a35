"""Data: JSONL manifests (the format every loader reads) and the procedural shapes world.

Kept import-light: nothing here imports torch; torch datasets live in their own modules.
"""

from hydra_umm.data.manifest import ManifestError, read_manifest, write_manifest

__all__ = ["ManifestError", "read_manifest", "write_manifest"]
