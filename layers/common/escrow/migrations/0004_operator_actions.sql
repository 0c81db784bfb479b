-- What operators did with the console (escrow.ops): every action that moves money, with who, why and what came of
-- it. A money change an operator makes (a payout put back to scheduled) is written in the same transaction as its
-- row here; a replayed webhook or a manual job run gets its row before it starts and its outcome after.

CREATE TABLE operator_actions (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    action VARCHAR(32) NOT NULL,
    target VARCHAR(100) NOT NULL,
    operator VARCHAR(64) NOT NULL,
    reason VARCHAR(500) NOT NULL,
    status VARCHAR(16) NOT NULL,
    detail LONGTEXT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    finished_at DATETIME(3) NULL,
    KEY ix_operator_actions_target (target, id),
    KEY ix_operator_actions_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
