"""The Lightning side every data module shares: loaders by split from the module's `_loader(split, shuffle)`."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader


class SplitLoaders(L.LightningDataModule):
    """Lightning's train / val / test loaders (and `loader(split)`) from the subclass's `_loader(split, shuffle)`."""

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        raise TypeError(f"{type(self).__name__} must define _loader(split, shuffle)")

    def train_dataloader(self) -> DataLoader:
        """The training split, shuffled."""
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        """The validation split, in order."""
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        """The test split, in order."""
        return self._loader("test", False)

    def loader(self, split: str) -> DataLoader:
        """The loader of one split (`train`, `val`, `test`, or `all` at inference), unshuffled."""
        return self._loader(split, False)
