"""Adapters exposing an :class:`~ambient_med.prior.AmbientPrior` to other libraries (optional
extras; each module imports its library lazily)."""
