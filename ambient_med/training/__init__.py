"""Training a prior: the loop and everything that feeds it (docs/design.md sections 4 and 7).

* :mod:`.loop`: :func:`~.loop.train` and :class:`~.loop.TrainConfig` (EMA, atomic checkpoints,
  exact resume); :mod:`.ema`, :mod:`.checkpoint`, :mod:`.speed` (threads, channels-last,
  compile, autocast).
* :mod:`.datasets`: noisy items in model space (whole images or patch draws) and the
  ``sigma_n`` measured in them; :mod:`.transforms` k-space -> whitened, coil-combined images;
  :mod:`.cache` the preprocessed-item cache.
* :mod:`.config`: the protocol (YAML) and its keys; :mod:`.autoprotocol` the protocol chosen
  from the data when none is named.
"""
