"""Numbered migrations. `PRAGMA user_version` holds the number of the last one applied.

Append new migrations at the end; never edit one that has shipped, since old databases replay them.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the whole first schema.
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        platform TEXT NOT NULL,
        platform_user_id TEXT NOT NULL,
        display_name TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        UNIQUE (platform, platform_user_id)
    );
    CREATE TABLE chats (
        id INTEGER PRIMARY KEY,
        platform TEXT NOT NULL,
        platform_chat_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('dm', 'group', 'guild', 'console')),
        title TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        UNIQUE (platform, platform_chat_id)
    );
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
        private INTEGER NOT NULL,
        started REAL NOT NULL,
        last_activity REAL NOT NULL,
        closed REAL,
        state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
        close_reason TEXT
    );
    CREATE UNIQUE INDEX sessions_one_open ON sessions(user_id, chat_id) WHERE state = 'open';
    CREATE INDEX sessions_user ON sessions(user_id, started);
    CREATE INDEX sessions_open_idle ON sessions(state, last_activity);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
        author TEXT NOT NULL CHECK (author IN ('user', 'bot')),
        text TEXT NOT NULL,
        created REAL NOT NULL,
        platform_message_id TEXT
    );
    CREATE INDEX messages_session ON messages(session_id, id);
    CREATE INDEX messages_user ON messages(user_id, id);
    CREATE UNIQUE INDEX messages_platform_id ON messages(chat_id, author, platform_message_id)
        WHERE platform_message_id IS NOT NULL;
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        text, content='messages', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TABLE session_memories (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL UNIQUE REFERENCES sessions(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        private INTEGER NOT NULL,
        session_time REAL NOT NULL,
        facts TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('model', 'fallback')),
        model TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        compressed_all INTEGER,
        compressed_public INTEGER
    );
    CREATE INDEX session_memories_user ON session_memories(user_id, session_time);
    CREATE TABLE compressive_memories (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        scope TEXT NOT NULL CHECK (scope IN ('all', 'public')),
        version INTEGER NOT NULL,
        profile TEXT NOT NULL,
        relationship TEXT NOT NULL,
        events TEXT NOT NULL,
        source_sessions TEXT NOT NULL,
        model TEXT NOT NULL DEFAULT '',
        flagged INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        UNIQUE (user_id, scope, version)
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('session_memory', 'compress')),
        key TEXT NOT NULL,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        UNIQUE (kind, key)
    );
    CREATE INDEX jobs_due ON jobs(state, kind, not_before);
    CREATE TABLE model_outputs (
        id INTEGER PRIMARY KEY,
        job_id INTEGER REFERENCES jobs(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        task TEXT NOT NULL,
        raw TEXT NOT NULL,
        flagged INTEGER NOT NULL,
        reason TEXT,
        created REAL NOT NULL
    );
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: channels where the bot talks without being mentioned (set by admins).
    """
    ALTER TABLE chats ADD COLUMN always_reply INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: platform updates received but not yet handled, kept so a crash cannot lose one the platform was
    # told we had (see memory/inbox.py).
    """
    CREATE TABLE inbox (
        platform TEXT NOT NULL,
        update_id INTEGER NOT NULL,
        user_id TEXT,
        payload TEXT NOT NULL,
        received REAL NOT NULL,
        PRIMARY KEY (platform, update_id)
    );
    """,
    # 4: the full-text index holds owner-prefixed stemmed terms (memory/fts.py), so a search reads one
    # person's postings only. The content is a view over messages: no copy of any text is stored.
    """
    DROP TRIGGER messages_fts_insert;
    DROP TRIGGER messages_fts_delete;
    DROP TRIGGER messages_fts_update;
    DROP TABLE messages_fts;
    CREATE VIEW messages_fts_content AS
        SELECT id, membot_fts_terms(user_id, text) AS terms FROM messages;
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        terms, content='messages_fts_content', content_rowid='id', tokenize='unicode61 remove_diacritics 0'
    );
    CREATE VIRTUAL TABLE messages_fts_vocab USING fts5vocab(messages_fts, 'row');
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, terms) VALUES (new.id, membot_fts_terms(new.user_id, new.text));
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, terms)
            VALUES ('delete', old.id, membot_fts_terms(old.user_id, old.text));
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF text, user_id ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, terms)
            VALUES ('delete', old.id, membot_fts_terms(old.user_id, old.text));
        INSERT INTO messages_fts(rowid, terms) VALUES (new.id, membot_fts_terms(new.user_id, new.text));
    END;
    INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
    """,
    # 5: the index's terms are hashed with a key of their owner's (memory/fts.py), so forgetting a person
    # deletes their rows and their key instead of rebuilding the whole index. Deleting a user deletes their
    # messages first, while the key that their index entries need is still there. The indexes make a forget's
    # cascades look up the person's own rows instead of scanning every job, output, session and message.
    """
    ALTER TABLE users ADD COLUMN fts_key BLOB;
    UPDATE users SET fts_key = randomblob(16);
    CREATE TRIGGER users_fts_key AFTER INSERT ON users WHEN new.fts_key IS NULL BEGIN
        UPDATE users SET fts_key = randomblob(16) WHERE id = new.id;
    END;
    CREATE TRIGGER users_delete_messages_first BEFORE DELETE ON users BEGIN
        DELETE FROM messages WHERE user_id = old.id;
    END;
    DROP TRIGGER messages_fts_insert;
    DROP TRIGGER messages_fts_delete;
    DROP TRIGGER messages_fts_update;
    DROP TABLE messages_fts_vocab;
    DROP TABLE messages_fts;
    DROP VIEW messages_fts_content;
    CREATE VIEW messages_fts_content AS
        SELECT m.id, membot_fts_index(u.fts_key, m.text) AS terms FROM messages m JOIN users u ON u.id = m.user_id;
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        terms, content='messages_fts_content', content_rowid='id', tokenize='unicode61 remove_diacritics 0'
    );
    CREATE VIRTUAL TABLE messages_fts_vocab USING fts5vocab(messages_fts, 'row');
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, terms)
            VALUES (new.id, membot_fts_index((SELECT fts_key FROM users WHERE id = new.user_id), new.text));
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, terms)
            VALUES ('delete', old.id, membot_fts_index((SELECT fts_key FROM users WHERE id = old.user_id), old.text));
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF text, user_id ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, terms)
            VALUES ('delete', old.id, membot_fts_index((SELECT fts_key FROM users WHERE id = old.user_id), old.text));
        INSERT INTO messages_fts(rowid, terms)
            VALUES (new.id, membot_fts_index((SELECT fts_key FROM users WHERE id = new.user_id), new.text));
    END;
    INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
    CREATE INDEX jobs_user ON jobs(user_id);
    CREATE INDEX model_outputs_user ON model_outputs(user_id);
    CREATE INDEX model_outputs_job ON model_outputs(job_id);
    CREATE INDEX messages_chat ON messages(chat_id);
    CREATE INDEX sessions_chat ON sessions(chat_id);
    """,
    # 6: the server (Discord guild) a chat belongs to, so a server's admins act on that server's data only.
    # NULL for DMs and for chats that are not in a server (Telegram, the console).
    """
    ALTER TABLE chats ADD COLUMN server TEXT;
    CREATE INDEX chats_server ON chats(platform, server) WHERE server IS NOT NULL;
    """,
    # 7: jobs are claimed under a lease (memory/jobqueue.py), and one compressive version per person, scope
    # and set of sessions is a constraint. Doubles that two processes wrote before (the same sessions,
    # compressed twice) are removed, the first kept.
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    DELETE FROM compressive_memories WHERE EXISTS (
        SELECT 1 FROM compressive_memories AS first WHERE first.user_id = compressive_memories.user_id
        AND first.scope = compressive_memories.scope AND first.source_sessions = compressive_memories.source_sessions
        AND first.id < compressive_memories.id);
    CREATE UNIQUE INDEX compressive_once ON compressive_memories(user_id, scope, source_sessions);
    """,
    # 8: the process that received a kept update (memory/inbox.py): with several processes on one database
    # a starting process replays only the updates of processes that died, never a live one's. And the
    # message a reply answers: with several processes, a later message's reply (from another process) no
    # longer means an earlier one was answered.
    """
    ALTER TABLE inbox ADD COLUMN owner TEXT;
    ALTER TABLE messages ADD COLUMN reply_to INTEGER;
    CREATE INDEX messages_reply_to ON messages(reply_to) WHERE reply_to IS NOT NULL;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
