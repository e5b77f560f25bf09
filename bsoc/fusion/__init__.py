"""The fusion estimator: an LSTM's SOC inside a Kalman filter with coulomb counting.

Modules: :mod:`~bsoc.fusion.filter` (the compiled filter, one stream or many),
:mod:`~bsoc.fusion.settings` (its hyperparameters), :mod:`~bsoc.fusion.noise` (the LSTM's
measurement noise, learned from the training split), :mod:`~bsoc.fusion.tuning` (the search for the
settings on the validation split), :mod:`~bsoc.fusion.fit` (all of it for one LSTM and
dataset), :mod:`~bsoc.fusion.estimator` (the SocEstimator, kind ``fusion``),
:mod:`~bsoc.fusion.figures` (the noise model's figure).
"""
