"""segsrv: exact, interpretable behavioural segmentation over bitsets."""

__version__ = "0.1.0"
