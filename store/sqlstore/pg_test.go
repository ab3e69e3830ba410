package sqlstore_test

import (
	"net/url"
	"testing"

	"github.com/keyctl/keyctl/internal/pgtest"
)

// startPostgres returns the URL of a PostgreSQL database for the tests (see
// pgtest.Start: KEYCTL_TEST_PG_URL, else a throwaway loopback cluster).
func startPostgres(t *testing.T) string {
	t.Helper()
	return pgtest.Start(t)
}

// withParam adds a query parameter to a postgres:// URL, or a key=value to a
// keyword/value connection string.
func withParam(base, k, v string) string {
	if u, err := url.Parse(base); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set(k, v)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return base + " " + k + "=" + v
}
