"""The diffusion model and its maths, in model space (docs/design.md sections 3-5).

* :mod:`.networks`: EDM preconditioning (``c_skip``, ``c_out``, ``c_in``, ``c_noise``) around
  MONAI's ``DiffusionModelUNet``.
* :mod:`.losses`: the objectives (clean, naive, ambient-Tweedie, consistency) and their terms;
  :mod:`.chain_terms` the pair-consistency term, :mod:`.distill` the below-``sigma_n``
  self-distillation; :mod:`.fixed_points` measures which denoisers an objective leaves in place.
* :mod:`.reverse`: one reverse (ancestral / DDIM) step; :mod:`.sampling` the samplers (Heun,
  ancestral, truncated at ``sigma_n`` with a Tweedie step, posterior denoising).
* :mod:`.tweedie`: posterior variance and principal components from the denoiser's Jacobian.
* :mod:`.tiling`: overlapping tiles for images larger than the training patches.
* :mod:`.rotations`: posterior means averaged over quarter turns (images with no orientation).

Nothing here reads or writes files.
"""
