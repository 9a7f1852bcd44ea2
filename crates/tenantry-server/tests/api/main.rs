//! Integration tests: each starts the real server against a fresh PostgreSQL database and talks
//! HTTP to it. One test binary (one link, shared helpers), many modules.

mod admin;
mod archives;
mod auth;
mod cache;
mod cli;
mod cluster;
mod connections;
mod helpers;
mod identity;
mod input;
mod isolation;
mod jobs;
mod lifecycle;
mod limits;
mod moves;
mod openapi;
mod operations;
mod ops;
mod outages;
mod placements;
mod resolution;
mod startup;
