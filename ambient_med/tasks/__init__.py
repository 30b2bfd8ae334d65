"""What the commands do, callable from Python: each function takes paths and options, writes
files, returns a result; :mod:`ambient_med.cli` only parses, calls one of these and prints.

* :mod:`.train`: ``ambient-med train`` (:func:`~.train.run_training`).
* :mod:`.sample`: ``sample`` and ``info``; :mod:`.denoise`: ``denoise`` (posterior mean,
  uncertainty, samples); :mod:`.recon`: ``recon`` on k-space files; :mod:`.audit`: ``audit``
  (memorisation and held-out checks); :mod:`.demo`: ``demo`` on the built-in phantom.
* :mod:`.progress`: the one progress bar every command shows.
"""
