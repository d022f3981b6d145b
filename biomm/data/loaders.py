"""The Lightning side every data module shares: loaders by split from the module's `_loader(split, shuffle)`."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from biomm.data.samples import SampleDataset


class SplitLoaders(L.LightningDataModule):
    """Lightning's train / val / test loaders (and `loader(split)`) from `_loader(split, shuffle)`.

    The default loader batches the module's `samples[split]` (a list of `Sample`) with its `collate` under
    `cfg.batch_size` / `cfg.num_workers`; a streaming module (cells) overrides `_loader`."""

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(SampleDataset(self.samples[split]), batch_size=self.cfg.batch_size, shuffle=shuffle,
                          collate_fn=self.collate, num_workers=self.cfg.num_workers,
                          persistent_workers=self.cfg.num_workers > 0)

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

    def adapter_tables(self) -> dict[str, dict]:
        """Fixed tensors the data gives each adapter (`Adapter.set_tables`): `{modality: {name: tensor}}`."""
        return {}
