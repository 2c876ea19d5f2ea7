// Training: data sets, the trainer, schedules and metrics (filled in by the trainer issue).
// Depends on Formats (checkpoints) and everything below it.
@_exported import Formats
