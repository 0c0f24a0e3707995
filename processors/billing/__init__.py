"""Billing flow: cost allocation and chargeback reports, period close, price lists."""
