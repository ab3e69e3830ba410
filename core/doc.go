// Package core is keyctl's envelope-encryption engine.
//
// Data is encrypted with AES-256 data keys (DEKs). A DEK is wrapped by one or
// more key-encryption keys (KEKs) that live in a vault and are reached through
// a [KeyProvider]. The result is a [WrappedKey]: a small, portable, versioned
// record that names, for each wrap, the provider type, the KEK id and the
// exact KEK version that produced it, so that unwrapping is routed rather than
// guessed, and the same record moves between vault backends.
//
// On top of that core offers:
//
//   - [Keyring]: one primary provider that wraps new DEKs and any number of
//     decrypt-only providers; unwrap routes by what the record says.
//   - [Keyset]: the list of a keyring's DEKs with their states (primary,
//     decrypt-only, retired).
//   - [FieldCipher]: AES-256-GCM encryption of single database values with the
//     DEKs of a keyset, in the compact field ciphertext format.
//   - [DEKCache]: a cache of unwrapped DEKs with a maximum age and a maximum
//     number of uses that coalesces concurrent misses.
//
// core imports no provider and no vault SDK. The formats are specified in
// docs/format.md of the repository.
package core
