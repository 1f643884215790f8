"""Key neurons (Chen et al. 2024, NA-ICA / QRNCA)."""
