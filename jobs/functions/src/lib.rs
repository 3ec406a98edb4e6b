//! Example function libraries for rfaas (the serverless core fills this in).
