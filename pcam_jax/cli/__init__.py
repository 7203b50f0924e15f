"""The command-line binaries, one module each, every one a thin ``main`` that reads its flags
and calls one library function; the flags they share are declared once in ``common``.

    pcam-train    cli/train.py    -> pcam_jax.train.train_and_evaluate
    pcam-eval     cli/eval.py     -> pcam_jax.infer.evaluate.evaluate
    pcam-export   cli/export.py   -> pcam_jax.infer.export.export
    pcam-predict  cli/predict.py  -> pcam_jax.infer.patches.predict_patches
    pcam-slide    cli/slide.py    -> pcam_jax.wsi.run.run_slide
    pcam-explain  cli/explain.py  -> pcam_jax.explain.workflows
    pcam-data     cli/data.py     -> pcam_jax.data (one flag set per subcommand)
    python -m pcam_jax.cli.quickstart -> pcam_jax.quickstart.run_quickstart

This is the top of the import graph: nothing in pcam_jax imports ``cli`` but ``cli`` itself.
"""
