package core

import "context"

// KeyRef names a KEK: the provider type that serves it and its key id within
// that provider (a key-file name, an ARN, a token and label). A keyring routes
// unwrap requests by KeyRef.
type KeyRef struct {
	// Provider is the provider type, such as "localfile", "pkcs11", "awskms".
	Provider string
	// KeyID identifies the KEK within the provider type.
	KeyID string
}

// String renders r as "provider:key-id".
func (r KeyRef) String() string { return r.Provider + ":" + r.KeyID }

// KeyProvider wraps and unwraps DEKs with one KEK held in a vault. It is the
// interface every provider implements, in-process or through the plugin
// bridge. Implementations must be safe for concurrent use.
//
// A KEK may have several versions. WrapKey always uses the current one and
// records it in the [Stanza]; UnwrapKey opens the exact version the stanza
// names, never by trying others.
type KeyProvider interface {
	// Ref returns the provider type and KEK id. It never changes during the
	// provider's life and costs nothing.
	Ref() KeyRef

	// CurrentVersion returns the KEK version that WrapKey uses now, as it
	// will appear in Stanza.KeyVersion. It returns an error wrapping
	// ErrUnavailable when the vault cannot be reached.
	CurrentVersion(ctx context.Context) (string, error)

	// WrapKey wraps dek (exactly DEKSize bytes) under the current KEK version
	// and binds ec to the result. The returned stanza carries the provider's
	// Ref, the KEK version used, the algorithm and the wrapped bytes; it must
	// differ between two calls with the same inputs (fresh randomness).
	// Errors wrap ErrMalformed (bad DEK length or context), ErrKeyDisabled,
	// ErrPermission or ErrUnavailable.
	WrapKey(ctx context.Context, dek DEK, ec Context) (Stanza, error)

	// UnwrapKey opens a stanza produced by WrapKey of a provider with the
	// same Ref, with the same encryption context, and returns a DEK the caller
	// owns. Errors wrap ErrUnwrapFailed (tampered bytes, other context, other
	// key: the error does not say which), ErrKeyNotFound (the stanza's
	// version does not exist or was destroyed), ErrKeyDisabled,
	// ErrUnknownAlgorithm, ErrNoProvider (the stanza names another Ref),
	// ErrPermission or ErrUnavailable.
	UnwrapKey(ctx context.Context, s Stanza, ec Context) (DEK, error)
}

// VaultRewrapper is implemented by providers that can move a wrap onto their
// current KEK version without the DEK leaving the vault (AWS KMS ReEncrypt,
// for instance).
type VaultRewrapper interface {
	// RewrapKey returns a stanza for the same DEK wrapped under the
	// provider's current KEK version, from a stanza src of the same provider
	// type (possibly another key id of that type, when the vault allows it).
	// ec is the context of src and of the result. Errors are those of
	// UnwrapKey and WrapKey. ErrUnsupported means the caller should unwrap
	// and wrap itself; a provider returns it (possibly joined with
	// ErrNoProvider) for a src it cannot reach from inside its vault, such
	// as a stanza of another key id.
	RewrapKey(ctx context.Context, src Stanza, ec Context) (Stanza, error)
}

// DataKeyGenerator is implemented by providers that generate DEKs inside the
// vault (AWS KMS GenerateDataKey, an HSM's key generation).
type DataKeyGenerator interface {
	// GenerateDataKey returns a fresh DEK and its wrap under the current KEK
	// version with ec bound. Errors are those of WrapKey.
	GenerateDataKey(ctx context.Context, ec Context) (DEK, Stanza, error)
}

// KeyRotator is implemented by providers that can create a new KEK version.
type KeyRotator interface {
	// RotateKey creates a new KEK version, makes it current for WrapKey and
	// returns its version string. Older versions keep unwrapping until they
	// are disabled or destroyed. Errors wrap ErrUnsupported, ErrPermission or
	// ErrUnavailable.
	RotateKey(ctx context.Context) (string, error)
}

// HealthChecker is implemented by providers that can check their vault
// without wrapping anything.
type HealthChecker interface {
	// Health returns nil when the KEK is reachable and usable for wrapping;
	// otherwise an error wrapping ErrUnavailable, ErrPermission,
	// ErrKeyNotFound or ErrKeyDisabled.
	Health(ctx context.Context) error
}
