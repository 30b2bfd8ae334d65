"""Data with known answers, for tests, benchmarks and the demo.

* :mod:`.mixtures`: closed-form test distributions (Gaussian, mixtures, "air" mixtures) with
  their exact denoisers and MMSE.
* :mod:`.phantoms`: MRI phantoms, the demo's data and an ISMRMRD header.
* :mod:`.mri`: multi-coil k-space with known noise, and a fastMRI-format file writer.
* :mod:`.fluorescence`: fluorescence cells under Poisson-Gaussian noise, as TIFF stacks.
"""
