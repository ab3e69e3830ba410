package awskms

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/keyctl/keyctl/core"
)

// encryptionContext checks ec and returns it as a KMS EncryptionContext (nil
// for an empty context). Errors wrap core.ErrMalformed.
func (p *Provider) encryptionContext(ec core.Context) (map[string]string, error) {
	if len(ec) == 0 {
		return nil, nil
	}
	if err := ec.Validate(); err != nil {
		return nil, fmt.Errorf("awskms: key %s: %w", p.cfg.KeyID, err)
	}
	for k, v := range ec {
		if v == "" {
			return nil, fmt.Errorf("awskms: key %s: encryption context key %q has an empty value, which KMS refuses: %w", p.cfg.KeyID, k, core.ErrMalformed)
		}
	}
	return ec, nil
}

// checkStanza refuses stanzas this provider cannot open.
func (p *Provider) checkStanza(s core.Stanza) error {
	if s.Provider != Type || s.KeyID != p.cfg.KeyID {
		return fmt.Errorf("awskms: key %s cannot open a wrap of %s: %w", p.cfg.KeyID, s.Ref(), core.ErrNoProvider)
	}
	return p.checkAlgAndData(s)
}

func (p *Provider) checkAlgAndData(s core.Stanza) error {
	if s.Algorithm != core.AlgAWSKMS {
		return fmt.Errorf("awskms: key %s: wrap algorithm %v, want %v: %w", p.cfg.KeyID, s.Algorithm, core.AlgAWSKMS, core.ErrUnknownAlgorithm)
	}
	if len(s.Data) == 0 || len(s.Data) > maxCiphertextLen {
		return fmt.Errorf("awskms: key %s: ciphertext blob of %d bytes, want 1..%d: %w", p.cfg.KeyID, len(s.Data), maxCiphertextLen, core.ErrMalformed)
	}
	return nil
}

func (p *Provider) stanza(arn *string, blob []byte) (core.Stanza, error) {
	s := core.Stanza{
		Provider:   Type,
		KeyID:      p.cfg.KeyID,
		KeyVersion: aws.ToString(arn),
		Algorithm:  core.AlgAWSKMS,
		Data:       blob,
	}
	if err := s.Validate(); err != nil {
		return core.Stanza{}, fmt.Errorf("awskms: key %s: KMS returned an unusable result: %w", p.cfg.KeyID, err)
	}
	return s, nil
}

// CurrentVersion returns the ARN of the key that Config.KeyID names now
// (DescribeKey), the key version new wraps will record.
func (p *Provider) CurrentVersion(ctx context.Context) (string, error) {
	md, err := p.describe(ctx)
	if err != nil {
		return "", err
	}
	return aws.ToString(md.Arn), nil
}

func (p *Provider) describe(ctx context.Context) (*types.KeyMetadata, error) {
	var out *kms.DescribeKeyOutput
	err := p.call(ctx, "DescribeKey", func(ctx context.Context) (err error) {
		out, err = p.client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(p.cfg.KeyID)})
		return err
	})
	if err != nil {
		return nil, err
	}
	if out.KeyMetadata == nil || aws.ToString(out.KeyMetadata.Arn) == "" {
		return nil, fmt.Errorf("awskms: DescribeKey with key %s: no key ARN in the answer: %w", p.cfg.KeyID, core.ErrUnavailable)
	}
	return out.KeyMetadata, nil
}

// WrapKey encrypts dek with KMS Encrypt under Config.KeyID, with ec as the
// EncryptionContext.
func (p *Provider) WrapKey(ctx context.Context, dek core.DEK, ec core.Context) (core.Stanza, error) {
	if err := dek.Validate(); err != nil {
		return core.Stanza{}, fmt.Errorf("awskms: key %s: %w", p.cfg.KeyID, err)
	}
	kec, err := p.encryptionContext(ec)
	if err != nil {
		return core.Stanza{}, err
	}
	var out *kms.EncryptOutput
	err = p.call(ctx, "Encrypt", func(ctx context.Context) (err error) {
		out, err = p.client.Encrypt(ctx, &kms.EncryptInput{
			KeyId:             aws.String(p.cfg.KeyID),
			Plaintext:         dek,
			EncryptionContext: kec,
		})
		return err
	})
	if err != nil {
		return core.Stanza{}, err
	}
	return p.stanza(out.KeyId, out.CiphertextBlob)
}

// UnwrapKey decrypts s with KMS Decrypt, passing Config.KeyID (so a blob made
// under another key is refused) and ec as the EncryptionContext. It also
// refuses a result whose key ARN differs from the stanza's key version.
func (p *Provider) UnwrapKey(ctx context.Context, s core.Stanza, ec core.Context) (core.DEK, error) {
	if err := p.checkStanza(s); err != nil {
		return nil, err
	}
	dek, arn, err := p.decrypt(ctx, s.Data, ec)
	if err != nil {
		return nil, err
	}
	if arn != s.KeyVersion {
		dek.Zero()
		return nil, fmt.Errorf("awskms: key %s: the wrap records key version %q but KMS opened it with %q: %w", p.cfg.KeyID, s.KeyVersion, arn, core.ErrUnwrapFailed)
	}
	return dek, nil
}

// decrypt returns the 32-byte DEK inside blob and the key ARN KMS reports.
func (p *Provider) decrypt(ctx context.Context, blob []byte, ec core.Context) (core.DEK, string, error) {
	kec, err := p.encryptionContext(ec)
	if err != nil {
		return nil, "", err
	}
	var out *kms.DecryptOutput
	err = p.call(ctx, "Decrypt", func(ctx context.Context) (err error) {
		out, err = p.client.Decrypt(ctx, &kms.DecryptInput{
			KeyId:             aws.String(p.cfg.KeyID),
			CiphertextBlob:    blob,
			EncryptionContext: kec,
		})
		return err
	})
	if err != nil {
		return nil, "", err
	}
	dek := core.DEK(out.Plaintext)
	if err := dek.Validate(); err != nil {
		dek.Zero()
		return nil, "", fmt.Errorf("awskms: key %s: the ciphertext holds %d bytes, not a %d-byte data key: %w", p.cfg.KeyID, len(out.Plaintext), core.DEKSize, core.ErrMalformed)
	}
	return dek, aws.ToString(out.KeyId), nil
}

// GenerateDataKey asks KMS for a fresh AES-256 data key (GenerateDataKey
// with KeySpec AES_256) wrapped under Config.KeyID with ec bound.
func (p *Provider) GenerateDataKey(ctx context.Context, ec core.Context) (core.DEK, core.Stanza, error) {
	kec, err := p.encryptionContext(ec)
	if err != nil {
		return nil, core.Stanza{}, err
	}
	var out *kms.GenerateDataKeyOutput
	err = p.call(ctx, "GenerateDataKey", func(ctx context.Context) (err error) {
		out, err = p.client.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
			KeyId:             aws.String(p.cfg.KeyID),
			KeySpec:           types.DataKeySpecAes256,
			EncryptionContext: kec,
		})
		return err
	})
	if err != nil {
		return nil, core.Stanza{}, err
	}
	dek := core.DEK(out.Plaintext)
	if err := dek.Validate(); err != nil {
		dek.Zero()
		return nil, core.Stanza{}, fmt.Errorf("awskms: GenerateDataKey with key %s: KMS returned a %d-byte key: %w", p.cfg.KeyID, len(out.Plaintext), core.ErrUnavailable)
	}
	s, err := p.stanza(out.KeyId, out.CiphertextBlob)
	if err != nil {
		dek.Zero()
		return nil, core.Stanza{}, err
	}
	return dek, s, nil
}

// RewrapKey moves src onto Config.KeyID with KMS ReEncrypt: KMS decrypts and
// re-encrypts inside the service and the DEK never reaches this process. src
// may name another awskms key id (the credentials need kms:ReEncryptFrom on
// it); ec is the context of src and of the result.
//
// A stanza of another provider type gets core.ErrUnsupported joined with
// core.ErrNoProvider; a source key this caller may not use or cannot find
// gets core.ErrUnsupported joined with the KMS error, so that the caller
// falls back to unwrapping with the source's own provider.
func (p *Provider) RewrapKey(ctx context.Context, src core.Stanza, ec core.Context) (core.Stanza, error) {
	if src.Provider != Type {
		return core.Stanza{}, errors.Join(core.ErrUnsupported,
			fmt.Errorf("awskms: key %s cannot re-encrypt a wrap of %s inside KMS: %w", p.cfg.KeyID, src.Ref(), core.ErrNoProvider))
	}
	if err := p.checkAlgAndData(src); err != nil {
		return core.Stanza{}, err
	}
	kec, err := p.encryptionContext(ec)
	if err != nil {
		return core.Stanza{}, err
	}
	var out *kms.ReEncryptOutput
	err = p.call(ctx, "ReEncrypt", func(ctx context.Context) (err error) {
		out, err = p.client.ReEncrypt(ctx, &kms.ReEncryptInput{
			CiphertextBlob:               src.Data,
			SourceKeyId:                  aws.String(src.KeyID),
			SourceEncryptionContext:      kec,
			DestinationKeyId:             aws.String(p.cfg.KeyID),
			DestinationEncryptionContext: kec,
		})
		return err
	})
	if err != nil {
		if src.KeyID != p.cfg.KeyID && (errors.Is(err, core.ErrPermission) || errors.Is(err, core.ErrKeyNotFound)) {
			return core.Stanza{}, errors.Join(core.ErrUnsupported, err)
		}
		return core.Stanza{}, err
	}
	if got := aws.ToString(out.SourceKeyId); got != src.KeyVersion {
		return core.Stanza{}, fmt.Errorf("awskms: ReEncrypt to key %s: the source wrap records key version %q but KMS opened it with %q: %w", p.cfg.KeyID, src.KeyVersion, got, core.ErrUnwrapFailed)
	}
	return p.stanza(out.KeyId, out.CiphertextBlob)
}

// keyARN returns Config.KeyID, or for an alias the ARN of the key it names:
// the key-management operations (rotation) accept no aliases.
func (p *Provider) keyARN(ctx context.Context) (string, error) {
	if strings.HasPrefix(p.cfg.KeyID, "alias/") || strings.Contains(p.cfg.KeyID, ":alias/") {
		return p.CurrentVersion(ctx)
	}
	return p.cfg.KeyID, nil
}

// RotateKey asks KMS to rotate the key now (RotateKeyOnDemand) and returns
// the key ARN. KMS versions key material inside the key: the ARN, and so the
// version recorded in stanzas, does not change, and every earlier wrap keeps
// opening. Endpoints that do not implement RotateKeyOnDemand (local-kms
// answers HTTP 501) and keys that do not support it give an error wrapping
// core.ErrUnsupported; use [Provider.EnableRotation] for scheduled rotation.
func (p *Provider) RotateKey(ctx context.Context) (string, error) {
	arn, err := p.keyARN(ctx)
	if err != nil {
		return "", err
	}
	var out *kms.RotateKeyOnDemandOutput
	err = p.call(ctx, "RotateKeyOnDemand", func(ctx context.Context) (err error) {
		out, err = p.client.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: aws.String(arn)})
		return err
	})
	if err != nil {
		return "", err
	}
	if got := aws.ToString(out.KeyId); got != "" {
		return got, nil
	}
	return p.CurrentVersion(ctx)
}

// EnableRotation turns on automatic rotation of the key (EnableKeyRotation).
// periodDays is the rotation period (KMS allows 90 to 2560); 0 keeps KMS's
// default of 365 days.
func (p *Provider) EnableRotation(ctx context.Context, periodDays int) error {
	if periodDays != 0 && (periodDays < 90 || periodDays > 2560) {
		return fmt.Errorf("awskms: key %s: rotation period %d days, KMS allows 90..2560: %w", p.cfg.KeyID, periodDays, core.ErrMalformed)
	}
	arn, err := p.keyARN(ctx)
	if err != nil {
		return err
	}
	in := &kms.EnableKeyRotationInput{KeyId: aws.String(arn)}
	if periodDays != 0 {
		in.RotationPeriodInDays = aws.Int32(int32(periodDays))
	}
	return p.call(ctx, "EnableKeyRotation", func(ctx context.Context) error {
		_, err := p.client.EnableKeyRotation(ctx, in)
		return err
	})
}

// RotationStatus reports whether automatic rotation is on
// (GetKeyRotationStatus) and, when KMS says, the next rotation date.
func (p *Provider) RotationStatus(ctx context.Context) (enabled bool, next time.Time, err error) {
	arn, err := p.keyARN(ctx)
	if err != nil {
		return false, time.Time{}, err
	}
	var out *kms.GetKeyRotationStatusOutput
	err = p.call(ctx, "GetKeyRotationStatus", func(ctx context.Context) (err error) {
		out, err = p.client.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String(arn)})
		return err
	})
	if err != nil {
		return false, time.Time{}, err
	}
	return out.KeyRotationEnabled, aws.ToTime(out.NextRotationDate), nil
}

// Health checks with DescribeKey that the key exists, is enabled and is a
// symmetric encryption key.
func (p *Provider) Health(ctx context.Context) error {
	md, err := p.describe(ctx)
	if err != nil {
		return err
	}
	if md.KeyState != types.KeyStateEnabled || !md.Enabled {
		return fmt.Errorf("awskms: key %s (%s) is in state %s, not Enabled: %w", p.cfg.KeyID, aws.ToString(md.Arn), md.KeyState, core.ErrKeyDisabled)
	}
	if md.KeyUsage != "" && md.KeyUsage != types.KeyUsageTypeEncryptDecrypt {
		return fmt.Errorf("awskms: key %s (%s) has usage %s, not ENCRYPT_DECRYPT: %w", p.cfg.KeyID, aws.ToString(md.Arn), md.KeyUsage, core.ErrFailedPrecondition)
	}
	if md.KeySpec != "" && md.KeySpec != types.KeySpecSymmetricDefault {
		return fmt.Errorf("awskms: key %s (%s) has key spec %s, not SYMMETRIC_DEFAULT: %w", p.cfg.KeyID, aws.ToString(md.Arn), md.KeySpec, core.ErrFailedPrecondition)
	}
	return nil
}

// ImportCiphertext adopts blob, a KMS CiphertextBlob of a 32-byte data key
// made outside keyctl (with KMS Encrypt, or the CiphertextBlob of
// GenerateDataKey with KeySpec AES_256), encrypted under Config.KeyID with
// encryption context ec. It checks the blob with KMS Decrypt (passing the key
// id and ec), discards the plaintext, and returns a stanza recording the key
// ARN that KMS reports as the key version. Put it in a core.WrappedKey; from
// then on keyctl unwraps and rewraps it like its own wraps.
//
// Errors are those of UnwrapKey; a blob of a key that is not 32 bytes wraps
// core.ErrMalformed.
func (p *Provider) ImportCiphertext(ctx context.Context, blob []byte, ec core.Context) (core.Stanza, error) {
	if len(blob) == 0 || len(blob) > maxCiphertextLen {
		return core.Stanza{}, fmt.Errorf("awskms: key %s: ciphertext blob of %d bytes, want 1..%d: %w", p.cfg.KeyID, len(blob), maxCiphertextLen, core.ErrMalformed)
	}
	dek, arn, err := p.decrypt(ctx, blob, ec)
	if err != nil {
		return core.Stanza{}, err
	}
	dek.Zero()
	return p.stanza(&arn, append([]byte(nil), blob...))
}
