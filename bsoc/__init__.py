"""bsoc: a battery state-of-charge virtual sensor (LSTM, projected LSTM, EKF)."""

__version__ = "0.1.0"
