// PEFT: the PEFTMethod protocol, target matching and one file per method (filled in by the PEFT
// issue). Depends on Models only.
@_exported import Models
