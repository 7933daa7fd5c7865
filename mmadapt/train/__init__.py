"""The one trainer, its objectives, PEFT and freezing."""
