package route

// The routing hash must be identical on every replica and across releases:
// changing it reassigns every user. It is FNV-1a over the bytes (no
// allocation, no per-process seed) finished with the murmur3 64-bit
// finalizer, whose avalanche makes the per-version values independent
// enough for rendezvous scoring. Do not replace it with hash/maphash: that
// is seeded per process.

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// mix64 is murmur3's fmix64: a bijection with full avalanche.
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// modelSalt separates experiments on different models (and salts).
func modelSalt(salt, model string) uint64 {
	h := fnvString(fnvOffset, salt)
	h = fnvString(h^0xff, model) // 0xff cannot occur in a valid name: no ambiguity
	return mix64(h)
}

func versionSeed(modelSalt uint64, version string) uint64 {
	return mix64(fnvString(modelSalt^fnvOffset, version))
}

// hashString hashes a routing key under a model's salt.
func hashString(salt uint64, key string) uint64 {
	return mix64(fnvString(salt^fnvOffset, key))
}

// unitFloat maps h to a float64 uniform in the open interval (0, 1).
func unitFloat(h uint64) float64 {
	return (float64(h>>11) + 0.5) / (1 << 53)
}
