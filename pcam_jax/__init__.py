"""pcam_jax: rotation-equivariant CNNs for metastasis detection on PatchCamelyon.

The layers, from the bottom (each imports only those above it in this list, never one below;
docs/architecture.md draws the graph):

    errors       the one error hierarchy (PcamError and its subclasses)
    runtime      processes and mesh, XLA options, signals, atomic files, logs, figures
    equivariant  the p4/p4m group math (groups) and its linen layers (layers)
    models       the model zoo, built from equivariant
    data         PCam sources, the grain input pipeline, download, verify, stats, synth
    config       the config fields, recipe loading and the --config.* overrides
    workdir      the layout of a pcam-train run directory, and every read and write of it
    infer        loading trained models, the shared predict path, bundles, eval, patches, slides
    explain      attribution maps and figures         train   the trainer (train_and_evaluate)
    quickstart   the README's main job                 cli     one thin module per binary
"""

__version__ = "0.1.0"
