"""The HL7 v2 listener (MLLP): orders, patient updates and reports from the RIS and HIS."""
