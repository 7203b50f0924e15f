"""PatchCamelyon data: sources, the grain input pipeline and the `pcam-data` tools.

Importing this package inside a grain worker process (which re-imports the main module and
deserialises the input pipeline, and so imports it) binds the worker's life to its parent's:
see ``pcam_jax.runtime.children``.
"""

from pcam_jax.runtime.children import die_with_parent, is_child_process

if is_child_process():
    die_with_parent()
