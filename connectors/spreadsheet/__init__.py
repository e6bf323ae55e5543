"""Spreadsheet and CSV import: `churnguard import` turns history in Excel sheets and CRM
exports into events."""
