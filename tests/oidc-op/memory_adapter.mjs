// oidc-provider's storage adapter (its documented adapter interface) in this process's memory, for
// the test OP (server.mjs) and the benchmark peer (bench/oidc_peer/server.mjs). Each call makes one
// store, shared by every Provider instance given the class it returns. An entry lives `tolerance`
// seconds longer than oidc-provider asks.
export function memoryAdapter({ tolerance = 0 } = {}) {
  const store = new Map();
  const grantMembers = new Map();

  class MemoryAdapter {
    constructor(model) {
      this.model = model;
    }

    key(id) {
      return `${this.model}:${id}`;
    }

    static read(key) {
      const entry = store.get(key);
      if (!entry) {
        return undefined;
      }
      if (entry.expiresAt <= Date.now()) {
        store.delete(key);
        return undefined;
      }
      return entry.value;
    }

    static write(key, value, expiresIn) {
      const expiresAt = expiresIn ? Date.now() + (expiresIn + tolerance) * 1000 : Infinity;
      store.set(key, { value, expiresAt });
    }

    async upsert(id, payload, expiresIn) {
      const key = this.key(id);
      MemoryAdapter.write(key, payload, expiresIn);
      if (payload.grantId) {
        if (!grantMembers.has(payload.grantId)) {
          grantMembers.set(payload.grantId, new Set());
        }
        grantMembers.get(payload.grantId).add(key);
      }
      if (payload.uid) {
        MemoryAdapter.write(`sessionUid:${payload.uid}`, id, expiresIn);
      }
      if (payload.userCode) {
        MemoryAdapter.write(`userCode:${payload.userCode}`, id, expiresIn);
      }
    }

    async find(id) {
      return MemoryAdapter.read(this.key(id));
    }

    async findByUid(uid) {
      const id = MemoryAdapter.read(`sessionUid:${uid}`);
      return id ? this.find(id) : undefined;
    }

    async findByUserCode(userCode) {
      const id = MemoryAdapter.read(`userCode:${userCode}`);
      return id ? this.find(id) : undefined;
    }

    async consume(id) {
      const payload = MemoryAdapter.read(this.key(id));
      if (payload) {
        payload.consumed = Math.floor(Date.now() / 1000);
      }
    }

    async destroy(id) {
      store.delete(this.key(id));
    }

    async revokeByGrantId(grantId) {
      for (const key of grantMembers.get(grantId) ?? []) {
        store.delete(key);
      }
      grantMembers.delete(grantId);
    }
  }

  return MemoryAdapter;
}
