"""The EKF baseline: an equivalent-circuit model identified from data, and its Kalman filter.

Modules: :mod:`~bsoc.ekf.ecm` (model and tables), :mod:`~bsoc.ekf.identify` (ECM from the
training split: :mod:`~bsoc.ekf.ocv` for OCV(SOC), :mod:`~bsoc.ekf.ecm_fit` for the least-squares
fit of the dynamics), :mod:`~bsoc.ekf.lookup` (the ECM's compiled interpolation),
:mod:`~bsoc.ekf.filter` (the EKF, one compiled step for one stream or many),
:mod:`~bsoc.ekf.tuning` (noise search on the training split), :mod:`~bsoc.ekf.estimator`
(the SocEstimator), :mod:`~bsoc.ekf.fit` (all of it for one dataset).
"""
