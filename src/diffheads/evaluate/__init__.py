"""`diffheads evaluate`: score generated videos against ground truth with the field's metrics."""
