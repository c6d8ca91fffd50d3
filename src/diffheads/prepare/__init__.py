"""`diffheads prepare`: raw talking-head videos -> the data contract of SPEC.md."""
