package registry

import (
	"context"
	"errors"
	"io"
)

// Store persists models, artifacts and the audit log. The registry keeps all
// rules (names, lifecycle, traffic) and asks the Store only for atomic,
// durable storage, so a shared backend — PostgreSQL for models and events
// (one row per model locked with SELECT … FOR UPDATE, an events table with
// a sequence, NOTIFY on commit) and object storage for artifacts — can sit
// behind the same interface. FileStore is the local implementation;
// registrytest.Run is the conformance suite every Store must pass. Stores
// may also implement Importer, ArtifactOpener and ArtifactWriter, which
// Migrate uses to copy a whole registry from one store to another.
//
// Stores are safe for concurrent use, also by several processes sharing the
// same backing storage (that is what "Update is atomic" means).
type Store interface {
	// PutArtifact stores data under its sha256 and returns the artifact
	// (with Path set when the store has local files). It is idempotent,
	// and a stored artifact is complete and durable when it returns:
	// a version is only committed after its artifact.
	PutArtifact(ctx context.Context, data []byte) (Artifact, error)
	// ReadArtifact returns the bytes stored under sha256, or an error
	// wrapping ErrNotFound.
	ReadArtifact(ctx context.Context, sha256 string) ([]byte, error)
	// ArtifactPath returns a local file holding the artifact's bytes (a
	// remote store would download to a local cache), or an error wrapping
	// ErrNotFound.
	ArtifactPath(ctx context.Context, sha256 string) (string, error)

	// Model returns a copy of the named model, or an error wrapping
	// ErrNotFound if it has no versions.
	Model(ctx context.Context, name string) (Model, error)
	// Models returns copies of all models, sorted by name.
	Models(ctx context.Context) ([]Model, error)
	// Update runs fn on a copy of the named model (with no versions if it
	// is new) while holding an exclusive lock on it that other goroutines
	// and processes respect. If fn returns an error, nothing changes and
	// Update returns that error. Otherwise the modified model and the
	// events fn returned are committed together, atomically and durably:
	// after a crash at any point either both are visible or neither is.
	// The store assigns the events' Seq numbers. fn may be called only
	// once; it must not call the Store. A model that breaks the registry's
	// rules (see ValidateModel) is never committed: Update returns the
	// *StateError instead. A store that loads its state checks it the same
	// way and refuses an invalid one with an error wrapping
	// ErrInvalidState.
	Update(ctx context.Context, name string, fn func(m *Model) ([]Event, error)) error

	// Events returns committed events with Seq > after, in Seq order,
	// only those of the named model unless name is "".
	Events(ctx context.Context, name string, after uint64) ([]Event, error)
	// Seq returns the Seq of the last committed event (0 if none). It is
	// cheap (the registry's Watch polls it to see other processes'
	// changes).
	Seq(ctx context.Context) (uint64, error)

	// Close releases the store. It is safe to call more than once.
	Close() error
}

// ErrNotEmpty marks an Import (or a Migrate) refused because the
// destination store already holds models or events.
var ErrNotEmpty = errors.New("registry: the destination registry is not empty")

// Importer is a Store that can take another registry's whole content, keeping
// event sequence numbers (models migrate).
type Importer interface {
	// Import commits models and events as given, in one transaction, into a
	// store that holds no models and no events. Events keep their Seq.
	//
	// The events must be numbered 1, 2, 3, … without gaps and every model
	// must keep the registry's rules (ValidateModel); otherwise Import
	// returns an error and commits nothing. Into a store that holds any
	// model or event it returns an error wrapping ErrNotEmpty. After a
	// crash at any point the store holds either everything or nothing.
	// Artifacts are not imported: store them first (PutArtifact,
	// PutArtifactFrom), as Update expects.
	Import(ctx context.Context, models []Model, events []Event) error
}

// ArtifactOpener is a Store that can stream an artifact instead of reading
// it whole (models migrate uses it for artifacts of any size).
type ArtifactOpener interface {
	// OpenArtifact returns a reader of the bytes stored under sha256 and
	// their size, or an error wrapping ErrNotFound. The caller closes the
	// reader. The bytes are not verified by the store: hash them.
	OpenArtifact(ctx context.Context, sha256 string) (io.ReadCloser, int64, error)
}

// ArtifactWriter is a Store that can store an artifact streamed from a
// reader, never holding it whole in memory.
type ArtifactWriter interface {
	// PutArtifactFrom stores the bytes r yields until io.EOF under their
	// sha256, like PutArtifact. If reading r fails, nothing is stored and
	// the error is returned (wrapped): a reader that verifies what it
	// yields can so keep damaged bytes out of the store.
	PutArtifactFrom(ctx context.Context, r io.Reader) (Artifact, error)
}

// Notifier is a Store that learns of commits made by other processes (or
// other Store values on the same backend) as they happen, so that Watch
// need not wait for its next poll of Seq. The PostgreSQL store implements
// it with LISTEN/NOTIFY. A notification is only a hint to read Seq again:
// Watch still reads the events from the durable log, so a lost or
// duplicated notification can delay an event (until the next poll) but
// never lose or repeat one.
type Notifier interface {
	// Changed returns a channel that is closed after a commit to the
	// store that happened after the call, and also whenever the store's
	// notification link was broken or has just been re-established
	// (changes may have been missed meanwhile, or the store may now be
	// unreachable: either way the caller should read Seq again). Callers
	// take the channel before reading Seq, wait for it to close, and call
	// Changed again. Many callers may wait on one channel. After Close the
	// returned channel never closes.
	Changed() <-chan struct{}
}
