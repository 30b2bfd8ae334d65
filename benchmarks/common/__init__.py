"""What the benchmark scripts share, so that each script says only what it measures.

General pieces:

* ``paths``: the repository, the real data shared beside it;
* ``results``: the results folder, smoke-run file names, atomic JSON, run metadata;
* ``scoring``: PSNR, SSIM, coverage of posterior intervals;
* ``tables``: Markdown tables, the hand-written analysis kept below a generated report;
* ``figures``: matplotlib without a display, saving, image grids;
* ``work``: resumable work folders (progress files, checkpoints, keys of cached results);
* ``overrides``: ``--loss KEY=VALUE`` options.

Per benchmark family (data, models and reports the family's scripts share):

* FMD microscopy: ``fmd_data``, ``fmd_methods``, and ``curves`` (learning curves, also MRI's);
* MRI: ``mni`` (the simulated problem), ``mri_priors``, ``mri_baselines``, ``mri_real``, ``mri_table``;
* below the noise floor: ``air_mixture``, ``below_noise_report``;
* speed: ``gpu_setup``, ``bare_loop``, ``timing``, ``gpu_report``;
* exactness: ``exact``;
* magnitude MRI: ``magnitude_volume``.

Scripts run as ``python benchmarks/<name>.py``: the benchmarks folder is then first on
``sys.path``, and ``from common import ...`` finds this package.
"""
