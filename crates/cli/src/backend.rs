//! Backend selection by cargo feature. Library crates are generic over burn's `Backend`; only
//! this file names concrete backends.
