package core

import (
	"errors"
)

// Sentinel errors. Functions in this package and implementations of
// [KeyProvider] wrap these with %w and add what failed (which provider, which
// key id, which record); callers test for them with [errors.Is].
//
// The errors fall into two classes. Input errors mean that what the caller
// handed in is wrong (malformed, tampered, foreign or unsupported): retrying
// will not help. See [IsInputError]. Every other error, notably
// [ErrUnavailable], is an environment failure.
var (
	// ErrMalformed reports a record (wrapped key, field ciphertext, keyset,
	// encryption context) that cannot be parsed: truncated, trailing bytes,
	// a length over its limit, a field with forbidden characters.
	ErrMalformed = errors.New("malformed input")

	// ErrUnsupportedVersion reports a record whose format version this build
	// does not know.
	ErrUnsupportedVersion = errors.New("unsupported format version")

	// ErrUnknownAlgorithm reports a wrap whose algorithm code is neither
	// defined by this format version nor in the private-use range, or an
	// algorithm a provider does not implement.
	ErrUnknownAlgorithm = errors.New("unknown wrapping algorithm")

	// ErrUnwrapFailed reports that a provider could not open a wrap with the
	// KEK it names: the wrapped bytes were altered, the encryption context
	// differs from the one bound at wrap time, or the KEK is not the one that
	// wrapped it. For safety the error does not say which.
	ErrUnwrapFailed = errors.New("cannot unwrap")

	// ErrDecryptFailed reports that a field ciphertext did not authenticate
	// under its DEK: it was altered, or the associated data differs.
	ErrDecryptFailed = errors.New("cannot decrypt")

	// ErrNoProvider reports that no configured provider matches any wrap of a
	// wrapped key (provider type and key id).
	ErrNoProvider = errors.New("no configured provider can open this wrapped key")

	// ErrKeyNotFound reports that a KEK, a KEK version or a DEK id does not
	// exist (it was never created, or it was destroyed).
	ErrKeyNotFound = errors.New("key not found")

	// ErrKeyDisabled reports that a KEK version or a DEK exists but has been
	// disabled or retired and may not be used for this operation.
	ErrKeyDisabled = errors.New("key disabled")

	// ErrUnsupported reports an optional operation that a provider does not
	// implement.
	ErrUnsupported = errors.New("operation not supported by provider")

	// ErrUnavailable reports that the vault behind a provider could not be
	// reached or failed transiently. It is the one error worth retrying.
	ErrUnavailable = errors.New("provider unavailable")

	// ErrPermission reports that the vault refused the caller (bad PIN,
	// access denied, unsafe key file permissions).
	ErrPermission = errors.New("permission denied")

	// ErrFailedPrecondition reports an operation refused in the current
	// state, such as disabling the current KEK version or retiring the
	// primary DEK. The caller must change the state first (rotate, promote
	// another DEK); retrying as is will not help.
	ErrFailedPrecondition = errors.New("refused in the current state")
)

// IsInputError reports whether err is caused by the input the caller handed
// in (malformed, tampered, foreign or unsupported records, a record that
// names a key that does not exist, a request refused in the current state)
// rather than by the environment. The keyctl CLI exits with status 2 for these.
func IsInputError(err error) bool {
	for _, s := range []error{
		ErrMalformed, ErrUnsupportedVersion, ErrUnknownAlgorithm,
		ErrUnwrapFailed, ErrDecryptFailed, ErrNoProvider, ErrKeyNotFound,
		ErrFailedPrecondition,
	} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}
